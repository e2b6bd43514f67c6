"""A deleted message's content is gone everywhere a reader can reach it: the cursor
and page-numbered APIs (their cached bodies included), the project page, search and
mentions."""


from conftest import login_client

SECRET = "zebra-launch-code-4471"


def test_deleted_content_is_gone_from_api_page_search_and_cache(
    owner, member, project, send, django_capture_on_commit_callbacks
):
    send(owner, project, 3, prefix="before")
    author = login_client(owner)
    response = author.post(
        "/api/messages",
        {"project_id": project.pk, "content": f"{SECRET} for @member"},
        content_type="application/json",
    )
    assert response.status_code == 201
    message_id = response.json()["id"]
    send(owner, project, 2, prefix="after")

    reader = login_client(member)
    urls = [
        f"/api/projects/{project.pk}/messages",  # cursor history, latest page
        f"/api/projects/{project.pk}/messages?before=1000&limit=10",
        f"/api/projects/{project.pk}/messages?after=0",  # catch-up by change
        f"/api/messages?project_id={project.pk}",  # page-numbered history
        f"/api/messages?project_id={project.pk}&per_page=3&page=1",
        f"/api/search?q={SECRET}",
        f"/api/search?q={SECRET}&project_id={project.pk}",
        "/api/mentions",
        f"/projects/{project.pk}/",
        # The page echoes its query, so it searches by one word of the content.
        "/search?q=zebra",
    ]
    # Read everything once: the history bodies are now cached.
    for url in urls:
        response = reader.get(url)
        assert response.status_code == 200, url
        if url.startswith("/search"):
            assert response.content.decode().count('class="hit"') == 1
        else:
            assert SECRET in response.content.decode(), url

    # The delete's on-commit work (the cache version bump) runs as after a commit.
    with django_capture_on_commit_callbacks(execute=True):
        assert author.delete(f"/api/messages/{message_id}").status_code == 204

    for client in (reader, author):
        for url in urls:
            response = client.get(url)
            assert response.status_code == 200, url
            assert SECRET not in response.content.decode(), url
    # The tombstone keeps the message's place with no content.
    tombstone = next(
        m
        for m in reader.get(f"/api/projects/{project.pk}/messages").json()["items"]
        if m["id"] == message_id
    )
    assert (tombstone["deleted"], tombstone["content"]) == (True, "")
    assert reader.get(f"/api/search?q={SECRET}").json()["items"] == []
    assert reader.get("/api/mentions").json()["items"] == []
    assert 'class="hit"' not in reader.get("/search?q=zebra").content.decode()
