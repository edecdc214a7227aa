# OpenLambda format: f.py with f(event); the return value is the JSON response.
def f(event):
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    return {"hello": name}
