"""The front door's /v1 API: request and response models (`models`), the operations with their
role checks (`service`), authentication and limits (`auth`, `request_limits`, `access_log`), the
trace reads (`trace_reads`), error answers (`http_errors`) and the routes (`routes`). The app
that mounts these and the console: `cluster/front_door.py`."""
