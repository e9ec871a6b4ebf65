"""The review queue as the page shows it: least confident documents first.

The queue is the feedback service's (``ListReview``): it decides what is worth
asking, drops documents whose label settled or that expired, and orders the rest by
the margin between the top two scores. The console only turns its answer into the
rows the page draws, keeping that order.
"""

from __future__ import annotations

from typing import Any

from sentiflow_client.v1 import feedback_pb2


def review_json(response: feedback_pb2.ListReviewResponse) -> list[dict[str, Any]]:
    out = []
    for item in response.items:
        doc, answer = item.document, item.prediction  # no answer: empty label and scores
        out.append(
            {
                "id": doc.id,
                "margin": round(item.margin, 4),
                "text": doc.text,
                "source": doc.source,
                "entities": [e.id for e in doc.entities],
                "model": response.model,
                "version": answer.version,
                "label": answer.label,
                "scores": {s.label: round(s.score, 4) for s in answer.scores},
            }
        )
    return out
