"""The Users tab's forms; every change is a POST carrying its CSRF token."""
from flask_wtf import FlaskForm
from wtforms import SelectField, StringField, SubmitField
from wtforms.validators import DataRequired, Length, ValidationError

from common import paths
from common.errors import InvalidInput
from common.paths import MAX_EMAIL_CHARS

ROLE_CHOICES = [("user", "User"), ("admin", "Account administrator")]



def checked_by(check):
    """A field validator from a core check that raises InvalidInput with its reason."""
    def validator(form, field):
        try:
            check(field.data or "")
        except InvalidInput as exc:
            raise ValidationError(exc.message) from None
    return validator


class UserCreateForm(FlaskForm):
    username = StringField("User name (their login on every door)",
                           validators=[DataRequired(), checked_by(paths.validate_username)],
                           render_kw={"autocomplete": "off", "spellcheck": "false"})
    email = StringField("Email (the invitation goes there)",
                        validators=[DataRequired(), Length(max=MAX_EMAIL_CHARS), checked_by(paths.normalise_email)],
                        render_kw={"autocomplete": "off", "type": "email"})
    role = SelectField("Role", choices=ROLE_CHOICES, default="user")
    submit = SubmitField("Create and invite")


class UserEditForm(FlaskForm):
    email = StringField("Email",
                        validators=[DataRequired(), Length(max=MAX_EMAIL_CHARS), checked_by(paths.normalise_email)],
                        render_kw={"autocomplete": "off", "type": "email"})
    role = SelectField("Role", choices=ROLE_CHOICES)
    submit = SubmitField("Save")


class IpRuleForm(FlaskForm):
    cidr = StringField("Address or range", validators=[DataRequired(), Length(max=64)],
                       render_kw={"placeholder": "203.0.113.7 or 203.0.113.0/24", "spellcheck": "false"})
    submit = SubmitField("Add to the allow-list")
