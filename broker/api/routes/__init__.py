"""One router per resource; ``broker.api.app.ROUTERS`` lists what ``create_app`` mounts."""
