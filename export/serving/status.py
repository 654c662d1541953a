"""TensorFlow Serving's error statuses: one code per error, one HTTP status per code.

The real model server carries an `absl::Status` (a code and a message) from wherever a request
fails to the edge: the REST side writes `{"error": message}` with the HTTP status of the code
(`model_servers/http_server.cc`, `ToHTTPStatusCode`), the gRPC side answers the code itself
(`model_servers/grpc_status_util.cc`). `StatusError` is that status here; the REST server, the
gRPC server and the batcher raise it, and each edge maps it the same way the real one does.
"""

# absl::StatusCode -> HTTP status, as `ToHTTPStatusCode` in model_servers/http_server.cc.
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


class StatusError(Exception):
    """A failed request: `code` is an absl status code name ("INVALID_ARGUMENT", "NOT_FOUND",
    ...), `message` the text the real server would answer."""

    def __init__(self, code, message, http_status=None):
        if code not in HTTP_STATUS or code == "OK":
            raise ValueError(f"unknown error code {code!r}; use one of {sorted(HTTP_STATUS)}")
        super().__init__(message)
        self.code = code
        self.message = message
        # Only our extensions set their own HTTP status (413 for a body over the size limit);
        # everything the real server answers follows `ToHTTPStatusCode`.
        self.http_status = HTTP_STATUS[code] if http_status is None else http_status

    def __repr__(self):
        return f"StatusError({self.code}, {self.message!r})"


def invalid_argument(message):
    return StatusError("INVALID_ARGUMENT", message)


def not_found(message):
    return StatusError("NOT_FOUND", message)


def failed_precondition(message):
    return StatusError("FAILED_PRECONDITION", message)


def unavailable(message):
    return StatusError("UNAVAILABLE", message)


def internal(message):
    return StatusError("INTERNAL", message)
