"""The sharing forms; every change is a POST carrying its CSRF token."""
from flask_wtf import FlaskForm
from wtforms import IntegerField, PasswordField, RadioField, StringField, SubmitField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, NumberRange, Optional

from common.passwords import MAX_LENGTH

PERMISSION_CHOICES = (SelectChoice("read", "Read: browse and download"),
                      SelectChoice("write", "Read and write: also upload and make folders"),
                      SelectChoice("request", "Request files: a contact uploads only and sees nothing of the folder"))


# The link fields, made by functions so that each form lists them after its own fields.
def _expiry():
    return IntegerField("Link expires after (days)", validators=[Optional()])


def _password():
    return PasswordField("Link password (optional)", validators=[Optional(), Length(max=MAX_LENGTH)],
                         render_kw={"autocomplete": "new-password"})


def _download_limit():
    return IntegerField("Download limit (optional)",
                        validators=[Optional(), NumberRange(min=1, message="At least 1 download.")],
                        description="Whole-file downloads the link allows; empty for no limit.")


class ShareForm(FlaskForm):
    to = StringField("Share with", validators=[DataRequired(), Length(max=320)],
                     description="A user name of your account, or the email address of someone outside it "
                                 "(they get a link by mail; the link settings below are for them).")
    permission = RadioField("They may", choices=list(PERMISSION_CHOICES), default="read")
    expires_in_days = _expiry()
    password = _password()
    max_downloads = _download_limit()
    submit = SubmitField("Share")


class LinkForm(FlaskForm):
    """A new link for a contact: expiry, optional password, optional download limit."""

    expires_in_days = _expiry()
    password = _password()
    max_downloads = _download_limit()
    submit = SubmitField("Send the new link")


def apply_policy(form, policy):
    """Show the account's link policy on the link fields (the core enforces it)."""
    form.expires_in_days.description = f"At most {policy.max_days} days in this account."
    if not form.is_submitted():
        form.expires_in_days.data = policy.default_days
    if policy.password_required:
        form.password.label.text = "Link password (required in this account)"
    if isinstance(form, ShareForm) and not policy.request_links_allowed:
        form.permission.choices = [choice for choice in PERMISSION_CHOICES if choice.value != "request"]
    return form
