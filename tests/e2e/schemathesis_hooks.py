"""Schemathesis hooks of ``test_schemathesis.py``, loaded by Schemathesis (``.venv-fuzz``).

Not a test module: pytest never imports it (the service's venv has no Schemathesis).
"""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.core.failures import AcceptedNegativeData
from schemathesis.core.parameters import ParameterLocation

MULTIPART = "multipart/form-data"


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Every failure is kept, but "invalid data accepted" for a multipart body whose only
    invalid values are empty lists.

    An empty list reaches the server as no part at all: when Schemathesis 4.32 draws
    ``[]`` as the invalid value of an optional number field (``min_confidence``), the
    request it sends is valid, and the API rightly accepts it. (It drops the like of
    this for query parameters itself, not yet for multipart fields.)
    """
    if not isinstance(failure, AcceptedNegativeData) or case.media_type != MULTIPART:
        return True
    fields = getattr(case.body, "body", case.body)  # per-part content types wrap the dict
    mutations = getattr(getattr(getattr(case, "meta", None), "phase", None), "data", None)
    mutations = getattr(mutations, "mutations", None)
    if not isinstance(fields, dict) or not mutations:
        return True

    def vanishes(mutation: Any) -> bool:
        path = tuple(mutation.path)
        value = fields.get(path[0]) if len(path) == 1 else None
        empty = isinstance(value, list) and not value
        return mutation.parameter_location == ParameterLocation.BODY and empty

    return not all(vanishes(mutation) for mutation in mutations)
