"""Page sizes and limits of every listing, and the page-numbered listing's JSON
shape (docs/API.md §5), shared by every such read.

The hot path (chatsite.hotpath) reads these too, so it cannot drift from the API.
"""

# Cursor reads (history, mentions, search): `limit` items at most.
DEFAULT_LIMIT = 50  # also the first history page the clients read: the cached one
MAX_LIMIT = 200  # a larger history or mentions limit is clamped to this
MAX_SEARCH_LIMIT = 100  # search: a larger limit is clamped to this

# Ids and query numbers are 64-bit: a larger number names nothing (and SQLite
# raises OverflowError on it instead of finding no row).
MAX_ID = 2**63 - 1

# Page-numbered reads: `per_page` items a page.
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 100


def page_numbered(items, total, page, per_page):
    return {
        "items": items,
        "total": total,
        "page": page,
        "per_page": per_page,
        "has_next": page * per_page < total,
        "has_prev": page > 1,
    }
