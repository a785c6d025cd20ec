"""The web explorer (issue 15; docs/explorer.md): what the ledger holds, as pages.

:mod:`~chronicle.explorer.model` reads what a page shows from the store (bounded reads
only), :mod:`~chronicle.explorer.render` turns it into HTML (every ledger value escaped),
``templates/`` holds the page layout and ``static/`` the stylesheet, ``check.js`` (the
in-browser check) and the vendored libraries it uses (``static/vendor/``, with their
licences). Nothing here knows HTTP: the server's explorer routes call it.
"""

from __future__ import annotations
