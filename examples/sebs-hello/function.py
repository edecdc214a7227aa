# SeBS format: function.py with handler(event) returning {"result": ...}.
import platform


def handler(event):
    size = int(event.get("size", 10)) if isinstance(event, dict) else 10
    squares = [i * i for i in range(size)]
    return {"result": {"sum": sum(squares), "python": platform.python_version()}}
