//! The text form: every op kind, symbolic dims and flags print and parse back to the same graph;
//! malformed text is a clear `Err`; dead-node elimination keeps outputs and state writes.

use polytensor::{
    BinaryOp, DType, Device, Dim, Error, Graph, Offset, ReduceOp, Rounding, Session, UnaryOp,
};

fn every_op() -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", [Dim::sym("seq", 2048), Dim::Fixed(4)], DType::F32);
    let w = g.weight("layers.0.w", [4, 4], DType::BF16);
    let s = g.state("kv_cache", [Dim::Fixed(2048), Dim::Fixed(4)], DType::F32);
    let c = g
        .constant(&[0.5, -1.25, 3.0, 1e-3], [4], DType::F32)
        .expect("const");
    let xb = g.cast(x, DType::BF16).expect("cast");
    let m = g.matmul_t(xb, w, false, true).expect("matmul");
    let mf = g
        .cast_with(m, DType::F32, Rounding::NearestEven)
        .expect("cast");
    let mut y = g.add(mf, c).expect("add");
    for op in UnaryOp::ALL {
        y = g.unary(op, y).expect("unary");
    }
    for op in BinaryOp::ALL {
        y = g.binary(op, y, c).expect("binary");
    }
    let nw = g.weight("norm.w", [4], DType::F32);
    let nb = g.weight("norm.b", [4], DType::F32);
    let sm = g.softmax(y).expect("softmax");
    let rn = g.rms_norm(sm, nw, 1e-6).expect("rms_norm");
    let ln = g
        .layer_norm(rn, Some(nw), Some(nb), 1e-5)
        .expect("layer_norm");
    let ln = g.layer_norm(ln, None, Some(nb), 0.25).expect("layer_norm");
    let ln = g.layer_norm(ln, None, None, 1e-5).expect("layer_norm");
    let am = g.argmax(ln).expect("argmax");
    let r = g.reduce(ReduceOp::Mean, y, 1).expect("reduce");
    let sr = g
        .cast_with(r, DType::F16, Rounding::Stochastic { stream: 7 })
        .expect("sr cast");
    g.keep_f32(y).expect("keep");
    g.write_state("kv_cache", y, 0, Offset::Sym("pos".into()))
        .expect("write");
    let rs = g
        .reshape(y, [Dim::sym("seq", 2048), Dim::Fixed(2), Dim::Fixed(2)])
        .expect("reshape");
    let pm = g.permute(rs, &[0, 2, 1]).expect("permute");
    let sl = g.slice(pm, 1, 1, 1).expect("slice");
    let cc = g.concat(&[sl, sl], 1).expect("concat");
    let window = g
        .slice(s, 0, 1, Dim::sym("n", 1024))
        .expect("run-time slice");
    let ids = g.input("ids", [Dim::sym("seq", 2048)], DType::I32);
    let rows = g.gather(w, ids).expect("gather");
    let heads = g
        .reshape(
            y,
            [
                Dim::Fixed(1),
                Dim::Fixed(1),
                Dim::sym("seq", 2048),
                Dim::Fixed(4),
            ],
        )
        .expect("reshape");
    let roped = g
        .rope(heads, 10_000.0, 4, false, Offset::Sym("pos".into()))
        .expect("rope");
    let roped = g
        .rope(roped, 500_000.0, 2, true, Offset::Fixed(3))
        .expect("rope");
    g.output("y", y).expect("out");
    g.output("r", sr).expect("out");
    g.output("am", am).expect("out");
    g.output("moved", cc).expect("out");
    g.output("window", window).expect("out");
    g.output("rows", rows).expect("out");
    g.output("roped", roped).expect("out");
    // Attention with every mask, and its log-sum-exp form.
    let kv = vec![
        Dim::Fixed(2),
        Dim::Fixed(2),
        Dim::sym("ctx", 64),
        Dim::Fixed(8),
    ];
    let q = g.input("aq", [2, 4, 3, 8], DType::BF16);
    let k = g.input("ak", kv.clone(), DType::BF16);
    let v = g.input("av", kv, DType::BF16);
    let len = g.input("alen", [2], DType::U32);
    let att = g
        .attention(
            q,
            k,
            v,
            Some(len),
            0.125,
            true,
            Some(Offset::Sym("pos".into())),
        )
        .expect("attention");
    let lse = g
        .attention_lse(q, k, v, None, 0.5, false, Some(Offset::Fixed(2)))
        .expect("attention_lse");
    g.output("att", att).expect("out");
    g.output("lse", lse).expect("out");
    g
}

#[test]
fn print_parse_round_trip() {
    let g = every_op();
    let text = g.to_string();
    let back = Graph::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back, g, "{text}");
    assert_eq!(back.to_string(), text);
    assert!(text.contains("seq<=2048"), "{text}");
    assert!(
        text.contains("sr(7)") && text.contains("keep_f32"),
        "{text}"
    );
}

#[test]
fn malformed_text_is_a_clear_error() {
    let cases = [
        ("%0: f32[2] = Nope(x:1)()", "bad op"),
        ("%1: f32[2] = Input(name:\"x\")()", "expected node %0"),
        ("%0: f99[2] = Input(name:\"x\")()", "unknown dtype"),
        ("%0: f32[2,a<=x] = Input(name:\"x\")()", "bad maximum"),
        ("%0: f32[2] Input", "expected `lhs = rhs`"),
        (
            "%0: f32[2] = Input(name:\"x\")()\n%1: f32[3] = Unary(Neg)(%0)\nout y = %1",
            "declares",
        ),
        (
            "%0: f32[2] = Input(name:\"x\")()\nout y = %5",
            "does not exist",
        ),
        (
            "%0: f32[2] = Input(name:\"x\")()\n%1: f32[2] = Unary(Neg)(%4)\nout y = %1",
            "does not precede",
        ),
    ];
    for (text, want) in cases {
        let err = Graph::parse(text).expect_err(text);
        assert!(
            err.to_string().contains(want),
            "`{text}`: got `{err}`, want `{want}`"
        );
    }
}

#[test]
fn dead_nodes_are_removed_but_writes_and_outputs_kept() {
    let mut g = Graph::new();
    let x = g.input("x", [3], DType::F32);
    let _dead = g.unary(UnaryOp::Exp, x).expect("dead");
    let s = g.state("acc", [3], DType::F32);
    let y = g.add(s, x).expect("add");
    g.write_state("acc", y, 0, Offset::Fixed(0)).expect("write");
    let z = g.unary(UnaryOp::Neg, x).expect("neg");
    g.output("z", z).expect("out");
    let mut sess = Session::new(&Device::cpu());
    sess.create_state("acc", &[3], DType::F32).expect("state");
    let p = sess.compile(&g).expect("compile");
    assert_eq!(
        p.graph().nodes().len(),
        g.nodes().len() - 1,
        "{}",
        p.graph()
    );
    assert!(
        p.graph()
            .nodes()
            .iter()
            .all(|n| !matches!(n.op, polytensor::Op::Unary(UnaryOp::Exp)))
    );
    // A graph with nothing to compute is rejected by validate.
    let mut empty = Graph::new();
    empty.input("x", [3], DType::F32);
    assert!(matches!(sess.compile(&empty), Err(Error::InvalidGraph(_))));
}

#[test]
fn awkward_symbol_and_output_names_round_trip() {
    // `Dim::sym` and `Graph::output` take any string; the text form must read every one back.
    let names = [
        "my seq",
        "a,b",
        "[x]",
        "q\"uote",
        "back\\slash",
        "ünïcödé",
        "",
        "a<=b",
        "x = y",
        "new\nline",
        "tab\there",
        "%0",
        "out y",
        "ctl\u{1}",
        "\"",
    ];
    let mut g = Graph::new();
    for (k, name) in names.iter().enumerate() {
        let x = g.input(
            &format!("x{k}"),
            [Dim::sym(name, 8 + k), Dim::Fixed(2)],
            DType::F32,
        );
        let y = g.unary(UnaryOp::Neg, x).expect("neg");
        g.output(name, y).expect("out");
    }
    let s = g.state("s", [4, 2], DType::F32);
    let v = g.input("v", [1, 2], DType::F32);
    g.write_state("s", v, 0, Offset::Sym("pos, \"the\" (offset)".into()))
        .expect("write");
    let _ = s;
    let text = g.to_string();
    let back = Graph::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back, g, "{text}");
    assert_eq!(back.to_string(), text);
    // Plain names still print bare.
    assert!(Graph::parse(&every_op().to_string()).is_ok());
    assert!(every_op().to_string().contains("[seq<=2048,4]"));
    // Broken quoting is a clear error.
    for (bad, want) in [
        ("%0: f32[\"ab<=3] = Unary(Neg)(%0)", "expected `lhs = rhs`"),
        ("%0: f32[\"a\"] = Input(name:\"x\")()", "<=max"),
        ("%0: f32[\"a\\q\"<=3] = Input(name:\"x\")()", "bad escape"),
    ] {
        let e = Graph::parse(bad).expect_err(bad);
        assert!(e.to_string().contains(want), "`{bad}`: {e}");
    }
}
