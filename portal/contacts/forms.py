"""The Contacts tab's forms; every change is a POST carrying its CSRF token."""
from flask_wtf import FlaskForm
from wtforms import StringField, SubmitField
from wtforms.validators import DataRequired, Length

from common import paths
from common.paths import MAX_EMAIL_CHARS
from common.sharing import CONTACT_NAME_MAX
from portal.users.forms import checked_by


class ContactForm(FlaskForm):
    name = StringField("Name", validators=[Length(max=CONTACT_NAME_MAX)], render_kw={"autocomplete": "off"})
    email = StringField("Email", validators=[DataRequired(), Length(max=MAX_EMAIL_CHARS),
                                             checked_by(paths.normalise_email)],
                        render_kw={"autocomplete": "off", "type": "email"})
    submit = SubmitField("Save")
