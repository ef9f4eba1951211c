async def test_health(client):
    r = await client.get("/opencode/health")
    assert r.status == 200, await r.text()
    assert (await r.json())["status"] == "ok"
