"""Headers the API sets on its own: nosniff on every answer, and redirects that do not trust the
Host header."""

from __future__ import annotations

NOSNIFF = ("x-content-type-options", "nosniff")


def test_every_answer_says_nosniff(client, tenant, make_adapter) -> None:
    adapter = make_adapter(tenant)
    answers = [
        client.get("/healthz"),
        client.get(f"/adapters/{adapter['id']}", headers=tenant.headers),
        client.get(f"/adapters/{adapter['id']}/ranks?format=svg", headers=tenant.headers),
        client.get("/adapters/ad_nope", headers=tenant.headers),  # an error body too
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 404]
    assert answers[2].headers["content-type"].startswith("image/svg+xml")
    for answer in answers:
        assert answer.headers.get(NOSNIFF[0]) == NOSNIFF[1], answer.request.url


def test_the_console_redirect_ignores_a_forged_host(client) -> None:
    response = client.get("/ui", headers={"Host": "evil.example"}, follow_redirects=False)
    assert response.status_code in (301, 302, 307, 308)
    assert response.headers["location"] == "/ui/"
    assert client.get("/ui/").status_code == 200
