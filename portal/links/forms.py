"""The link pages' forms."""
from flask_wtf import FlaskForm
from wtforms import PasswordField, SubmitField
from wtforms.validators import DataRequired, Length


class LinkPasswordForm(FlaskForm):
    password = PasswordField("Password", validators=[DataRequired(message="Enter the link's password."),
                                                     Length(max=1024)],
                             render_kw={"autocomplete": "off", "autofocus": True})
    submit = SubmitField("Open")
