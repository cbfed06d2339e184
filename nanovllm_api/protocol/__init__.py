"""Request and response bodies of the OpenAI API, as pydantic models: one module per
endpoint, plus what they share (``common``, ``sampling``) and the structured-output policy
(``structured_outputs``).

Requests accept every field the server implements; a field it does not implement yet is
refused by name (``common.UNSUPPORTED_FIELDS``) rather than silently ignored, and an unknown
field is refused as OpenAI does.
"""
