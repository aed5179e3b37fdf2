def test_smoke(pgstore_store):
    pgstore_store.save("x", {"a": 1}, 60)
    assert pgstore_store.load("x").data == {"a": 1}
