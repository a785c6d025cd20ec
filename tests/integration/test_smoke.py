from tests.helpers import RunningServer


async def test_publish_then_lasthash(server: RunningServer) -> None:
    res = await server.publish("alice", "hello")
    assert res.status == 200, res.body
    receipt = res.json["results"]
    last = await server.request("GET", "/chronicle/lasthash")
    row = last.json["results"][0]
    assert row["currhash"] == receipt["currhash"]
    assert row["contents"] == "hello"
