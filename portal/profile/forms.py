"""The profile's forms; every change is a POST carrying its CSRF token."""
from flask_wtf import FlaskForm
from wtforms import PasswordField, SelectField, StringField, SubmitField, TextAreaField
from wtforms.validators import DataRequired, EqualTo, Length

from common.auth import MAX_KEY_LINE
from common.auth.app_passwords import APP_PASSWORD_LABEL_MAX
from common.passwords import MAX_LENGTH, MIN_LENGTH


class PasswordChangeForm(FlaskForm):
    current = PasswordField("Current password", validators=[DataRequired()],
                            render_kw={"autocomplete": "current-password"})
    new = PasswordField("New password", validators=[DataRequired(), Length(max=MAX_LENGTH)],
                        render_kw={"autocomplete": "new-password"})
    confirm = PasswordField("New password again", validators=[
        DataRequired(), EqualTo("new", message="The two new passwords differ; type the same one twice.")],
        render_kw={"autocomplete": "new-password"})
    submit = SubmitField("Change my password")


def describe_password_rules(rules: dict) -> list[str]:
    """The account's password rules (accounts.password_rules) as sentences for a password form."""
    shown = [f"At least {max(rules.get('min_length', 0), MIN_LENGTH)} characters."]
    shown += [text for key, text in (("upper", "An upper-case letter."), ("lower", "A lower-case letter."),
                                     ("digit", "A digit."), ("symbol", "A character that is not a letter or digit."))
              if rules.get(key)]
    return shown + ["Not common or easy to guess: a few unrelated words make a strong password."]


class CodeForm(FlaskForm):
    code = StringField("6-digit code from your authenticator app", validators=[DataRequired(), Length(max=16)],
                       render_kw={"autocomplete": "one-time-code", "inputmode": "numeric"})
    submit = SubmitField("Confirm")


class ButtonForm(FlaskForm):
    """A POST with nothing but its CSRF token (start, regenerate, remove, sign out everywhere)."""

    submit = SubmitField("Continue")


class SshKeyForm(FlaskForm):
    key = TextAreaField("Public key (the whole line of your .pub file)",
                        validators=[DataRequired(), Length(max=MAX_KEY_LINE)],
                        render_kw={"rows": 3, "spellcheck": "false", "placeholder": "ssh-ed25519 AAAA… me@laptop"})
    submit = SubmitField("Add key")


class AppPasswordForm(FlaskForm):
    label = StringField("What it is for (e.g. the office scanner)",
                        validators=[Length(max=APP_PASSWORD_LABEL_MAX)])
    submit = SubmitField("Create app password")


class NotificationsForm(FlaskForm):
    """Each kind of mail: the account's default, on or off (the labels are set per page)."""

    uploads = SelectField("New files in folders I follow")
    alerts = SelectField("Lockouts and failed integrity checks (admins)")
    exports = SelectField("The daily audit export is ready (admins)")
    submit = SubmitField("Save my choices")
