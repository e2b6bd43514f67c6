"""Content-Security-Policy header (Django 5.2 has no built-in CSP).

The pages load their script and styles from /static/ only and embed their state
as `<script type="application/json">` (json_script), which a CSP does not treat
as script; so the strict policy below holds for every page of ours.
"""

POLICY = (
    "default-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; "
    "script-src 'self'; style-src 'self'; frame-ancestors 'none'; "
    "base-uri 'self'; form-action 'self'"
)
# The staff-only performance page styles its tables in an inline <style> block;
# only that page allows inline styles (still no inline script).
RELAXED_STYLE_PATHS = ("/admin/performance/",)
RELAXED_POLICY = POLICY.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


class ContentSecurityPolicyMiddleware:
    """Add the Content-Security-Policy header to every response that lacks one."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            relaxed = request.path.startswith(RELAXED_STYLE_PATHS)
            response["Content-Security-Policy"] = RELAXED_POLICY if relaxed else POLICY
        return response
