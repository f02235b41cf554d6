"""Errors of the key store.

One tree; Azure SDK and file errors are translated once, where they happen
(:mod:`broker.keys.vault`, :mod:`broker.keys.files`)::

    KeyStoreError           base: the broker's keys cannot be had (it does not start)
    ├── KeyStoreUnavailable the vault cannot be reached, refuses the sign-in, or
    │                       the identity lacks a permission (says which vault, why)
    └── KeyMaterialError    a key is there but unusable (wrong type, unreadable file)

Every message is one line for an operator and never carries key material or
a token.  A sealed value that cannot be opened is the domain's
(:class:`broker.access.errors.AccessError`), raised by the SecretBox.
"""

from __future__ import annotations


class KeyStoreError(Exception):
    """The broker's keys cannot be loaded, created or used."""


class KeyStoreUnavailable(KeyStoreError):
    """The key store cannot be reached or refuses this broker."""


class KeyMaterialError(KeyStoreError):
    """A stored key is unreadable or of the wrong kind."""
