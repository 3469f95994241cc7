"""``lucidic-otel ui``: a read-only local web viewer over the local store.

The store is already the whole record of what an application did (every span, every Lucidic
event), so a viewer needs no server of its own and no database to set up: this package serves
a few static pages (shipped as package data, vanilla JS, no CDN, no build step) and a small
JSON API read from the same SQLite file, opened read-only, while applications keep writing it.

Modules: :mod:`.queries` (read-only SQL), :mod:`.views` (span rows to what the pages show),
:mod:`.server` (the HTTP server, its safety checks and the command).
"""
