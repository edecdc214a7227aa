//! The runtime's SeBS loading and envelope (`runtime/kindling_runtime.py`), run by the host's
//! python3 over a code directory in a temporary directory (the sandboxed paths are covered by
//! the e2e tests).

#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

/// Loads `code` as SeBS code with the runtime in `runtime`, runs `script` after it (the runtime
/// is `k`, the handler's module `m`) and returns what the script printed as JSON.
fn run(runtime: &Path, code: &Path, script: &str) -> Value {
    let program = format!(
        "import json, sys\nsys.path.insert(0, {runtime:?})\nimport kindling_runtime as k\n\
         sys.path.insert(0, {code:?})\nm = k._sebs_package({code:?})\n{script}"
    );
    let out = Command::new("python3")
        .args(["-S", "-c", &program])
        .env_clear()
        .output()
        .expect("python3 runs (the runtime is Python)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn layout(nosql: bool) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("runtime");
    let code = dir.path().join("code");
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::create_dir_all(&code).unwrap();
    let write = |p: &Path, s: &str| std::fs::write(p, s).unwrap();
    write(
        &runtime.join("kindling_runtime.py"),
        kindling_worker::runtime::SOURCE,
    );
    write(
        &runtime.join("storage.py"),
        kindling_worker::runtime::STORAGE_SOURCE,
    );
    if nosql {
        write(&runtime.join("nosql.py"), "class nosql:\n    pass\n");
    }
    write(&code.join("__init__.py"), "FROM_INIT = __name__\n");
    write(&code.join("helper.py"), "def twice(x):\n    return 2 * x\n");
    write(
        &code.join("function.py"),
        "from . import storage\nfrom .helper import twice\nimport storage as top\n\n\
         def handler(event):\n    if isinstance(event, dict) and 'plain' in event:\n        \
         return event['plain']\n    return {'result': twice(2), 'same': storage is top, \
         'event': event, 'measurement': {'t': 1.5}}\n\n\
         def nosql_state():\n    try:\n        from . import nosql\n    except ImportError as e:\n        \
         return 'ImportError: ' + str(e)\n    return 'same' if nosql is __import__('nosql') else 'other'\n",
    );
    (dir, runtime, code)
}

#[test]
fn sebs_code_is_the_package_function_with_the_runtimes_clients() {
    let (_dir, runtime, code) = layout(false);
    let v = run(
        &runtime,
        &code,
        "p = sys.modules['function']\n\
         print(json.dumps({'module': m.__name__, 'init': p.FROM_INIT, \
         'ret': m.handler({}), 'nosql': m.nosql_state(), 'package_path': p.__path__}))",
    );
    assert_eq!(v["module"], "function.function");
    assert_eq!(
        v["init"], "function",
        "the code's own __init__.py runs as the package's"
    );
    assert_eq!(v["ret"]["result"], 4);
    assert_eq!(
        v["ret"]["same"], true,
        "`from . import storage` is `import storage`"
    );
    assert_eq!(v["package_path"], json!([code.to_string_lossy()]));
    let nosql = v["nosql"].as_str().unwrap();
    assert!(
        nosql.starts_with("ImportError: ") && nosql.contains("no `nosql` client"),
        "{nosql}"
    );

    // With the runtime's nosql.py, `from . import nosql` is that module.
    let (_dir, runtime, code) = layout(true);
    let v = run(&runtime, &code, "print(json.dumps(m.nosql_state()))");
    assert_eq!(v, "same");
}

#[test]
fn the_envelope_is_sebs_wrappers() {
    let (_dir, runtime, code) = layout(false);
    let v = run(
        &runtime,
        &code,
        "import datetime, os\n\
         os.environ['cold_start'] = 'yes'\n\
         ns = 1796688516 * 10**9 + 7_654 * 1000 + 999\n\
         want = datetime.datetime.fromtimestamp(1796688516).replace(microsecond=7654).strftime('%s.%f')\n\
         out = {'stamp': k._sebs_stamp(ns), 'want': want}\n\
         out['dict'] = k._sebs_envelope(m.handler, {'a': 1}, 'rid-1', True, 'sb-1')\n\
         out['list'] = k._sebs_envelope(m.handler, [1], 'rid-2', False, 'sb-1')\n\
         out['plain'] = k._sebs_envelope(m.handler, {'plain': 42}, 'rid-3', False, 'sb-1')\n\
         print(json.dumps(out))",
    );
    assert_eq!(v["stamp"], v["want"], "like strftime('%s.%f')");
    assert_eq!(v["stamp"], "1796688516.007654");

    let e = &v["dict"];
    // (serde_json's map is sorted)
    let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "begin",
            "cold_start_var",
            "container_id",
            "end",
            "is_cold",
            "request_id",
            "result",
            "results_time",
        ]
    );
    let begin: f64 = e["begin"].as_str().unwrap().parse().unwrap();
    let end: f64 = e["end"].as_str().unwrap().parse().unwrap();
    assert!(end >= begin, "{e}");
    assert_eq!(e["results_time"], 0);
    assert_eq!(e["is_cold"], true);
    assert_eq!(e["request_id"], "rid-1");
    assert_eq!(e["container_id"], "sb-1");
    assert_eq!(e["cold_start_var"], "yes");
    // The handler's dict as returned; the event got SeBS's two keys before the call.
    let result = e["result"].as_object().unwrap();
    assert_eq!(
        result.keys().collect::<Vec<_>>(),
        ["event", "measurement", "result", "same"]
    );
    assert_eq!(result["measurement"], json!({"t": 1.5}));
    let event = &result["event"];
    assert_eq!(event["a"], 1);
    assert_eq!(event["request-id"], "rid-1");
    let income = event["income-timestamp"].as_f64().unwrap();
    assert!(income > 0.0 && income <= end + 1.0, "{e}");

    // An event that is not a dict is passed as it is; a value that is not a dict is `result`.
    assert_eq!(v["list"]["result"]["event"], json!([1]));
    assert_eq!(v["list"]["is_cold"], false);
    assert_eq!(v["plain"]["result"], 42);
}
