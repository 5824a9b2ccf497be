"""One router per resource; `app.create_app` mounts each at `/` and at `/api`, as ComfyUI does."""
