//! docs/rpc.md's method table must match the registry. Set BATON_UPDATE_DOCS=1
//! to rewrite it.

mod rpc_support;

const BEGIN: &str = "<!-- methods:begin -->\n";
const END: &str = "<!-- methods:end -->";

#[test]
fn docs_method_table_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/rpc.md");
    let doc = std::fs::read_to_string(&path).expect("read docs/rpc.md");
    let start = doc.find(BEGIN).expect("begin marker") + BEGIN.len();
    let end = doc.find(END).expect("end marker");
    let table = engine::rpc::docs::methods_markdown(&rpc_support::engine_registry());
    if doc[start..end] != table {
        if std::env::var_os("BATON_UPDATE_DOCS").is_some() {
            let new = format!("{}{}{}", &doc[..start], table, &doc[end..]);
            std::fs::write(&path, new).unwrap();
        } else {
            panic!(
                "docs/rpc.md method table is stale: run BATON_UPDATE_DOCS=1 cargo test -p baton-engine --test rpc_docs\nexpected:\n{table}"
            );
        }
    }
}
