"""The ``x-reactor-*`` headers: what the consumer writes on the copies it sends to the
delayed-retry and dead-letter queues, and what ``reactor deadletters`` and the AsyncAPI document
read back. Part of the wire contract, so every user takes the names from here.
"""
from __future__ import annotations

PREFIX = "x-reactor-"
ATTEMPTS = PREFIX + "attempts"            # failed deliveries so far (int)
FIRST_SEEN = PREFIX + "first-seen"        # when the reactor first processed the message
ROUTING_KEY = PREFIX + "routing-key"      # routing key it was originally published with
EXCHANGE = PREFIX + "exchange"            # exchange it was originally published to
QUEUE = PREFIX + "queue"                  # main queue it was consumed from
MESSAGE_ID = PREFIX + "message-id"        # its AMQP message id (or none)
REASON = PREFIX + "reason"                # dead letters: the rejection reason
DETAIL = PREFIX + "detail"                # dead letters: what was wrong (tokens masked)
OUTCOME = PREFIX + "outcome"              # dead letters: the outcome label
DEAD_LETTERED_AT = PREFIX + "dead-lettered-at"
RETRY_REASON = PREFIX + "retry-reason"    # delayed retries: why the last attempt failed
# The broker's own redelivery counter (quorum queues): folded into ATTEMPTS, never copied on.
BROKER_COUNT = "x-delivery-count"
# The longest DETAIL written: enough for a schema error's path and rule, bounded for headers.
DETAIL_CHARS = 1000
