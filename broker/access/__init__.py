"""The control plane's domain: who may ask for what, who approves, for how long.

Pure: no web framework, SSH library or ORM (import-linter keeps it so).
Storage, clock, ids, randomness and the audit emitter come in through
:class:`broker.access.ports.Context`; :class:`broker.access.services.Services`
bundles the services built from it.
"""
