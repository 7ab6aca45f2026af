"""The file browser's forms; names are checked again by common.paths when they are used."""
from flask_wtf import FlaskForm
from wtforms import HiddenField, StringField, SubmitField
from wtforms.validators import AnyOf, DataRequired, Length

NAME_FIELD = {"validators": [DataRequired(message="Enter a name."), Length(max=255)],
              "render_kw": {"autocomplete": "off", "autocapitalize": "none", "spellcheck": "false"}}


class NewFolderForm(FlaskForm):
    name = StringField("Folder name", **NAME_FIELD)
    submit = SubmitField("Create folder")


class RenameForm(FlaskForm):
    name = StringField("New name", **NAME_FIELD)
    submit = SubmitField("Rename")


class MoveForm(FlaskForm):
    target = HiddenField(validators=[DataRequired(message="Choose a folder."), Length(max=40)])
    submit = SubmitField("Move here")


class DeleteForm(FlaskForm):
    submit = SubmitField("Delete permanently")


class FollowForm(FlaskForm):
    """Follow (`on`) or stop following (`off`) a folder."""

    follow = HiddenField(validators=[AnyOf(("on", "off"))])
