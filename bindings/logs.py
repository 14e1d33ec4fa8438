"""`serve --log-format json`: one JSON object per log line, with the request id, for log collectors."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from granite_gguf.bindings.service import request_id


class JsonFormatter(logging.Formatter):
    """time, level, logger, message, request_id (the record's own, as the batcher's worker threads give it,
    else the request being answered), and the exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id.get(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)
