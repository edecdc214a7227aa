//! The example functions, shipped inside the binary so `kindling up --examples` works from any
//! directory.

/// (function name, [(file name, contents)]).
pub const EXAMPLES: &[(&str, &[(&str, &str)])] = &[
    (
        "hello",
        &[("f.py", include_str!("../../../examples/hello/f.py"))],
    ),
    (
        "sebs-hello",
        &[
            (
                "function.py",
                include_str!("../../../examples/sebs-hello/function.py"),
            ),
            (
                "config.json",
                include_str!("../../../examples/sebs-hello/config.json"),
            ),
        ],
    ),
    (
        "gzip-json",
        &[
            ("f.py", include_str!("../../../examples/gzip-json/f.py")),
            (
                "ol.yaml",
                include_str!("../../../examples/gzip-json/ol.yaml"),
            ),
        ],
    ),
];

/// Packs one example as the .tar.gz the registry takes.
pub fn pack(files: &[(&str, &str)]) -> std::io::Result<Vec<u8>> {
    let dir = tempfile_dir()?;
    for (name, body) in files {
        std::fs::write(dir.join(name), body)?;
    }
    let packed = kindling_worker::archive::pack_dir(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    packed
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "kindling-example-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
