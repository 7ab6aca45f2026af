"""The sign-in forms, and those of the set-password links and "Forgot password"."""
from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, Length

from portal.profile.forms import PasswordChangeForm


class SignInForm(FlaskForm):
    username = StringField("User name", validators=[DataRequired(), Length(max=255)],
                           render_kw={"autocomplete": "username", "autofocus": True, "autocapitalize": "none"})
    password = PasswordField("Password", validators=[DataRequired()],
                             render_kw={"autocomplete": "current-password"})
    submit = SubmitField("Sign in")


class CodeForm(FlaskForm):
    code = StringField("Code from your authenticator app, or a recovery code",
                       validators=[DataRequired(), Length(max=64)],
                       render_kw={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True})
    submit = SubmitField("Verify")


class SetPasswordForm(PasswordChangeForm):
    """A set-password link's form: the profile's password change, less the current password."""

    current = None
    submit = SubmitField("Set my password")


class ForgotForm(FlaskForm):
    username = StringField("User name", validators=[DataRequired(), Length(max=255)],
                           render_kw={"autocomplete": "username", "autofocus": True, "autocapitalize": "none"})
    submit = SubmitField("Send me a reset link")
