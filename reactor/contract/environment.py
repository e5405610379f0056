"""The environment variables of the actor mode (``reactor invoke``, contract §7): where the actor
platform puts the message and its duplicate key. Message parameters come in variables named as
``contract.messages.PARAM_NAMES``."""

MESSAGE_VAR = "MSG"
MESSAGE_ID_VAR = "message_id"
