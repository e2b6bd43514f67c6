"""The page-numbered listing's JSON shape (SPEC §4), shared by every such read."""


def page_numbered(items, total, page, per_page):
    return {
        "items": items,
        "total": total,
        "page": page,
        "per_page": per_page,
        "has_next": page * per_page < total,
        "has_prev": page > 1,
    }
