"""Conversions between the canonical annotation model (``labelloop.types``) and each platform's or
dataset's own format. Every format converts to and from the canonical model, never to another
format directly, so N formats need N converters and any pair stays consistent."""
