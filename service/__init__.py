"""convoai-ledger: Agora Conversational AI webhooks into a Postgres lifecycle ledger."""

from __future__ import annotations

__version__ = "0.1.0"
