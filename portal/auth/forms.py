"""The sign-in forms."""
from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, Length


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
