"""The Contacts tab: people outside the account (an email and a name, no login) that folders are
shared with by link; deleted users stay on here.

Every change is a POST form with its CSRF token, made by one `common.sharing` call as the
signed-in admin and audited as `admin_change`; another account's contact ids are a 404.
"""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, url_for

from common import sharing
from common.errors import AlreadyExists
from portal.administration import in_my_account, keyring
from portal.auth.current import admin_required
from portal.contacts.forms import ContactForm
from portal.profile.forms import ButtonForm

bp = Blueprint("contacts", __name__, url_prefix="/contacts")


def _my_contact(contact_id: int) -> sharing.ContactInfo:
    """One contact of my account, opened (another account's is a 404)."""
    def find(db, account, actor):
        sharing.find_contact(db, account, contact_id)
        return next(c for c in sharing.list_contacts(db, keyring(), account) if c.id == contact_id)
    return in_my_account(find)


@bp.get("/")
@admin_required
def index():
    contacts = in_my_account(lambda db, account, actor: sharing.list_contacts(db, keyring(), account))
    return render_template("contacts/index.html", contacts=contacts)


@bp.route("/new", methods=["GET", "POST"])
@admin_required
def create():
    return _contact_form(ContactForm(), None, lambda db, account, actor, form: sharing.add_contact(
        db, keyring(), account, email=form.email.data, name=form.name.data, actor=actor))


@bp.route("/<int:contact_id>/edit", methods=["GET", "POST"])
@admin_required
def edit(contact_id: int):
    contact = _my_contact(contact_id)
    return _contact_form(ContactForm(data={"name": contact.name, "email": contact.email}), contact,
                         lambda db, account, actor, form: sharing.update_contact(
                             db, keyring(), account, sharing.find_contact(db, account, contact_id),
                             email=form.email.data, name=form.name.data, actor=actor))


def _contact_form(form: ContactForm, contact: sharing.ContactInfo | None, save):
    """The add or edit page: `save(db, account, actor, form)` once the form is valid."""
    if form.validate_on_submit():
        try:
            in_my_account(lambda db, account, actor: save(db, account, actor, form))
        except AlreadyExists as exc:
            form.email.errors.append(exc.message)
        else:
            flash(f"The contact {form.email.data} is saved.", "success")
            return redirect(url_for("contacts.index"), 303)
    return render_template("contacts/form.html", form=form, contact=contact), 400 if form.errors else 200


@bp.route("/<int:contact_id>/delete", methods=["GET", "POST"])
@admin_required
def delete(contact_id: int):
    contact = _my_contact(contact_id)
    form = ButtonForm()
    if form.validate_on_submit():
        in_my_account(lambda db, account, actor: sharing.delete_contact(
            db, keyring(), account, sharing.find_contact(db, account, contact_id), actor=actor))
        flash(f"{contact.email} is deleted from the contacts, with the shares made with them.", "success")
        return redirect(url_for("contacts.index"), 303)
    return render_template("contacts/delete.html", contact=contact, form=form)
