"""Byte transports, one module per URL scheme. Only these modules touch sockets, pyserial,
files or CUPS; :mod:`drivers.scanner` and :mod:`drivers.printer` import them lazily."""
