"""One router per resource; :data:`ROUTERS` is what ``create_app`` mounts."""
