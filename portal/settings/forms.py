"""The settings page's forms; every change is a POST carrying its CSRF token.

Each form's fields have names of their own, since the forms share one page.
"""
from flask_wtf import FlaskForm
from wtforms import BooleanField, HiddenField, IntegerField, StringField, SubmitField
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange

from common.account_settings import LINK_MAX_DAYS
from common.passwords import MAX_LENGTH, MIN_LENGTH


class PolicyForm(FlaskForm):
    min_length = IntegerField("Minimum length", validators=[
        InputRequired(), NumberRange(MIN_LENGTH, MAX_LENGTH, f"Give a length from {MIN_LENGTH} to {MAX_LENGTH}.")])
    upper = BooleanField("An upper-case letter")
    lower = BooleanField("A lower-case letter")
    digit = BooleanField("A digit")
    symbol = BooleanField("A character that is not a letter or digit")
    save_policy = SubmitField("Save the password rules")


class MfaForm(FlaskForm):
    require_mfa = BooleanField("Require two-step sign-in (TOTP) of every user")
    save_mfa = SubmitField("Save")


class RuleForm(FlaskForm):
    cidr = StringField("Address or CIDR range", validators=[DataRequired(), Length(max=64)],
                       render_kw={"placeholder": "203.0.113.0/24", "spellcheck": "false"})
    # Set by the warning page: the admin saw that the rule shuts out their own address.
    confirmed = HiddenField()
    add_rule = SubmitField("Add to the allow-list")


class NotifyDefaultsForm(FlaskForm):
    notify_uploads = BooleanField("Mail users about new files in the folders they follow")
    notify_alerts = BooleanField("Mail admins about lockouts and failed integrity checks")
    notify_exports = BooleanField("Mail admins when the daily audit export is ready")
    save_notify = SubmitField("Save the defaults")


class LinkPolicyForm(FlaskForm):
    link_max_days = IntegerField("Longest expiry of a share link (days)", validators=[
        InputRequired(), NumberRange(1, LINK_MAX_DAYS, f"Give a number of days from 1 to {LINK_MAX_DAYS}.")])
    link_password_required = BooleanField("Share links must have a password")
    request_links_allowed = BooleanField("Users may make request links (\"send me files\")")
    save_links = SubmitField("Save the link policy")


class ConfirmForm(FlaskForm):
    """A POST with nothing but its CSRF token (and whether a lock-out warning was accepted)."""

    confirmed = HiddenField()
    submit = SubmitField("Remove the rule")
