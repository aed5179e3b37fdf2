"""``.. fixture:: name`` and ``:fixture:`name```: the pytest plugin's fixtures
as objects of their own, indexed and cross-referenced like Python objects."""


def setup(app):
    app.add_object_type("fixture", "fixture", indextemplate="pair: %s; pytest fixture")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
