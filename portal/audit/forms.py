"""The audit page's forms: the filters (a GET form, so a filtered view is a link) and the
"verify the chain" button (a POST with its CSRF token)."""
from __future__ import annotations

import ipaddress
from datetime import datetime, time, timedelta, timezone

from flask_wtf import FlaskForm
from wtforms import DateField, SelectField, StringField, SubmitField, ValidationError
from wtforms.validators import Length, Optional

from common import audit

PATH_TEXT_MAX = 200


class FilterForm(FlaskForm):
    class Meta:
        csrf = False  # a GET form that changes nothing

    since = DateField("From (UTC day)", validators=[Optional()])
    until = DateField("To (UTC day, included)", validators=[Optional()])
    user = SelectField("User", coerce=str, validators=[Optional()])
    action = SelectField("Action", choices=[("", "Any action")] + [(a, a) for a in audit.ACTIONS],
                         validators=[Optional()])
    protocol = SelectField("Door", choices=[("", "Any door")] + [(p, p) for p in audit.PROTOCOLS],
                           validators=[Optional()])
    ip = StringField("Client IP", validators=[Optional(), Length(max=64)],
                     render_kw={"placeholder": "203.0.113.7", "spellcheck": "false"})
    path = StringField("Path contains", validators=[Optional(), Length(max=PATH_TEXT_MAX)],
                       render_kw={"spellcheck": "false"})

    def validate_ip(self, field):
        try:
            ipaddress.ip_address(field.data.strip())
        except ValueError:
            raise ValidationError("Give one address, such as 203.0.113.7 or 2001:db8::1.") from None

    def validate_until(self, field):
        if self.since.data and field.data and field.data < self.since.data:
            raise ValidationError("The last day comes before the first.")

    def event_filter(self) -> audit.EventFilter:
        """The filters as the core takes them (days are whole UTC days, the last one included)."""
        def start(day):
            return datetime.combine(day, time(0), tzinfo=timezone.utc) if day else None
        return audit.EventFilter(
            since=start(self.since.data),
            until=start(self.until.data + timedelta(days=1)) if self.until.data else None,
            user_id=int(self.user.data) if self.user.data else None,
            actions=(self.action.data,) if self.action.data else (),
            protocols=(self.protocol.data,) if self.protocol.data else (),
            ip=self.ip.data.strip() if self.ip.data else None,
            path_text=self.path.data.strip() if self.path.data and self.path.data.strip() else None)

    def args(self) -> dict[str, str]:
        """The filters as query arguments, for the page links and the downloads."""
        return {name: field.raw_data[0] for name, field in self._fields.items()
                if field.raw_data and field.raw_data[0]}


class VerifyForm(FlaskForm):
    submit = SubmitField("Verify the chain")
