//! Bad input is a clear `Err` naming the values, never a panic: every builder error path and
//! every `Session::run` misuse.

use polytensor::{
    DType, Device, Dim, Error, Graph, NodeId, Offset, Rounding, Session, Tensor, UnaryOp,
};

#[test]
fn builder_errors() {
    let mut g = Graph::new();
    let a = g.input("a", [2, 3], DType::F32);
    let b = g.input("b", [4, 5], DType::F32);
    let h = g.input("h", [3, 5], DType::F16);
    let i = g.input("i", [2, 3], DType::I32);
    let v = g.input("v", [3], DType::F32);

    let e = g.matmul(a, b).expect_err("inner mismatch");
    assert!(
        matches!(e, Error::ShapeMismatch { op: "matmul", .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("[2,3]") && e.to_string().contains("[4,5]"),
        "{e}"
    );
    let e = g.matmul(a, h).expect_err("dtype mismatch");
    assert!(
        matches!(
            e,
            Error::DTypeMismatch {
                lhs: DType::F32,
                rhs: DType::F16,
                ..
            }
        ),
        "{e}"
    );
    let e = g.matmul(v, a).expect_err("rank 1");
    assert!(e.to_string().contains("rank"), "{e}");
    let e = g.add(a, b).expect_err("broadcast");
    assert!(matches!(e, Error::ShapeMismatch { op: "add", .. }), "{e}");
    let e = g.unary(UnaryOp::Exp, i).expect_err("int exp");
    assert!(
        matches!(
            e,
            Error::UnsupportedDType {
                dtype: DType::I32,
                ..
            }
        ),
        "{e}"
    );
    let e = g.reduce(polytensor::ReduceOp::Sum, a, 2).expect_err("axis");
    assert!(e.to_string().contains("axis 2"), "{e}");
    let e = g.unary(UnaryOp::Neg, NodeId(999)).expect_err("foreign id");
    assert!(e.to_string().contains("%999"), "{e}");
    let e = g.constant(&[1.0, 2.0], [3], DType::F32).expect_err("count");
    assert!(
        matches!(
            e,
            Error::DataLength {
                expected: 3,
                got: 2,
                ..
            }
        ),
        "{e}"
    );
    let e = g
        .write_state("nope", a, 0, Offset::Fixed(0))
        .expect_err("no state");
    assert!(matches!(e, Error::UnknownState { .. }), "{e}");
    let s = g.state("s", [4, 3], DType::F16);
    let e = g
        .write_state("s", a, 0, Offset::Fixed(0))
        .expect_err("dtype");
    assert!(matches!(e, Error::DTypeMismatch { .. }), "{e}");
    let e = g
        .write_state("s", h, 0, Offset::Fixed(0))
        .expect_err("shape");
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    let sym_a = g.input("sa", [Dim::sym("seq", 8), Dim::Fixed(3)], DType::F32);
    let sym_b = g.input("sb", [Dim::sym("len", 8), Dim::Fixed(3)], DType::F32);
    let e = g.add(sym_a, sym_b).expect_err("different symbols");
    assert!(
        e.to_string().contains("seq<=8") && e.to_string().contains("len<=8"),
        "{e}"
    );
    let fixed8 = g.input("f8", [8, 3], DType::F32);
    assert!(
        g.add(sym_a, fixed8).is_err(),
        "a symbol never matches a fixed size other than 1"
    );
    assert!(
        g.add(sym_a, v).is_ok(),
        "broadcast with a fixed 1 or a missing dim is fine"
    );
    g.output("o", a).expect("output");
    assert!(g.output("o", a).is_err(), "duplicate output");
    let _ = s;
}

#[test]
fn compile_errors() {
    let sess = Session::new(&Device::cpu());
    // Stochastic rounding into an integer dtype is refused.
    let mut g = Graph::new();
    let x = g.input("x", [3], DType::F32);
    let y = g.cast(x, DType::I32).expect("builds");
    let e = g
        .set_rounding(y, Rounding::Stochastic { stream: 1 })
        .expect_err("int SR");
    assert!(
        matches!(
            e,
            Error::UnsupportedDType {
                dtype: DType::I32,
                ..
            }
        ),
        "{e}"
    );
    let mut g = Graph::new();
    let x = g.input("bad name!", [3], DType::F32);
    g.output("y", x).expect("out");
    let e = sess.compile(&g).err().expect("bad name");
    assert!(e.to_string().contains("bad name!"), "{e}");
    let mut g = Graph::new();
    let x = g.input("x", [3], DType::F32);
    let x2 = g.input("x", [4], DType::F32);
    g.output("a", x).expect("out");
    g.output("b", x2).expect("out");
    let e = sess.compile(&g).err().expect("duplicate input");
    assert!(e.to_string().contains("declared twice"), "{e}");
}

#[test]
fn run_misuse() {
    let mut g = Graph::new();
    let x = g.input("x", [Dim::sym("seq", 4), Dim::Fixed(2)], DType::F32);
    let w = g.weight("w", [2, 2], DType::F32);
    let s = g.state("s", [2], DType::F32);
    let y = g.matmul(x, w).expect("matmul");
    let y = g.add(y, s).expect("add");
    g.output("y", y).expect("out");
    let mut sess = Session::new(&Device::cpu());
    let p = sess.compile(&g).expect("compile");
    let xt = Tensor::new(&[3, 2], vec![1f32; 6]).expect("x");
    let wt = Tensor::new(&[2, 2], vec![1f32; 4]).expect("w");

    let e = sess
        .run(&p, &[("x", xt.view())], &[])
        .expect_err("no weight");
    assert!(matches!(e, Error::UnknownWeight { .. }), "{e}");
    sess.load_weight(
        "w",
        Tensor::new(&[2, 3], vec![1f32; 6]).expect("w").view(),
        DType::F32,
    )
    .expect("load");
    let e = sess
        .run(&p, &[("x", xt.view())], &[])
        .expect_err("weight shape");
    assert!(
        matches!(e, Error::TensorMismatch { kind: "weight", .. }),
        "{e}"
    );
    sess.load_weight("w", wt.view(), DType::F32).expect("load");
    let e = sess
        .run(&p, &[("x", xt.view())], &[])
        .expect_err("no state");
    assert!(matches!(e, Error::UnknownState { .. }), "{e}");
    sess.create_state("s", &[2], DType::F16).expect("state");
    let e = sess
        .run(&p, &[("x", xt.view())], &[])
        .expect_err("state dtype");
    assert!(e.to_string().contains("state `s`"), "{e}");
    sess.create_state("s", &[2], DType::F32).expect("state");

    let e = sess.run(&p, &[], &[]).expect_err("missing input");
    assert!(matches!(e, Error::MissingInput { .. }), "{e}");
    let e = sess
        .run(&p, &[("x", xt.view()), ("z", xt.view())], &[])
        .expect_err("unknown input");
    assert!(matches!(e, Error::UnknownInput { .. }), "{e}");
    let bad = Tensor::new(&[3, 5], vec![1f32; 15]).expect("bad");
    let e = sess.run(&p, &[("x", bad.view())], &[]).expect_err("shape");
    assert!(
        e.to_string().contains("f32[seq<=4,2]") && e.to_string().contains("[3,5]"),
        "{e}"
    );
    let bad = Tensor::from_f32(&[3, 2], vec![1f32; 6], DType::BF16).expect("bad");
    let e = sess.run(&p, &[("x", bad.view())], &[]).expect_err("dtype");
    assert!(e.to_string().contains("bf16"), "{e}");
    let big = Tensor::new(&[5, 2], vec![1f32; 10]).expect("big");
    let e = sess
        .run(&p, &[("x", big.view())], &[])
        .expect_err("over max");
    assert!(
        matches!(
            e,
            Error::DimOverMax {
                value: 5,
                max: 4,
                ..
            }
        ),
        "{e}"
    );
    let e = sess
        .run(&p, &[("x", xt.view())], &[("seq", 2)])
        .expect_err("conflict");
    assert!(matches!(e, Error::DimConflict { .. }), "{e}");
    let out = sess
        .run(&p, &[("x", xt.view())], &[])
        .expect("a correct run after the errors");
    assert_eq!(out.get("y").expect("y").to_f32_vec(), vec![2.0; 6]);
    assert!(out.get("nope").is_err());

    // A symbol that no input determines must be bound explicitly.
    let mut g = Graph::new();
    let st = g.state("kv", [4, 2], DType::F32);
    let xx = g.input("x", [1, 2], DType::F32);
    g.write_state("kv", xx, 0, Offset::Sym("pos".into()))
        .expect("write");
    g.output("kv", st).expect("out");
    sess.create_state("kv", &[4, 2], DType::F32).expect("state");
    let p = sess.compile(&g).expect("compile");
    let x1 = Tensor::new(&[1, 2], vec![1f32; 2]).expect("x");
    let e = sess.run(&p, &[("x", x1.view())], &[]).expect_err("unbound");
    assert!(matches!(e, Error::UnboundDim { .. }), "{e}");
    assert!(sess.read_state("missing").is_err());
    assert!(Tensor::new(&[2, 2], vec![1f32; 3]).is_err(), "data length");
}

#[test]
fn review_cases_are_errors_not_panics() {
    // A state only written (no node reads it) is still checked against the session's tensor.
    let mut g = Graph::new();
    let _kv = g.state("kv", [2, 8, 3], DType::BF16);
    let x = g.input("x", [2, 1, 3], DType::BF16);
    let w = g
        .write_state("kv", x, 1, Offset::Sym("pos".into()))
        .expect("write");
    let y = g.unary(UnaryOp::Neg, w).expect("neg");
    g.output("y", y).expect("out");
    let xt = Tensor::from_f32(&[2, 1, 3], vec![1.0; 6], DType::BF16).expect("x");
    for device in crate::common::devices_under_test() {
        let mut s = Session::new(&device);
        for bad in [&[8usize][..], &[2, 8, 1], &[2, 8, 5]] {
            s.create_state("kv", bad, DType::BF16).expect("state");
            let p = s.compile(&g).expect("compile");
            let e = s
                .run(&p, &[("x", xt.view())], &[("pos", 0)])
                .expect_err("wrong state shape");
            assert!(
                matches!(e, Error::TensorMismatch { kind: "state", .. }),
                "{e}"
            );
        }
        // An offset that would overflow is an Err.
        s.create_state("kv", &[2, 8, 3], DType::BF16)
            .expect("state");
        let p = s.compile(&g).expect("compile");
        let e = s
            .run(&p, &[("x", xt.view())], &[("pos", usize::MAX)])
            .expect_err("huge offset");
        assert!(matches!(e, Error::StateWriteOutOfRange { .. }), "{e}");
    }
    // Weights and states need fixed shapes.
    let mut g = Graph::new();
    let w = g.weight("w", [Dim::sym("n", 4), Dim::Fixed(2)], DType::F32);
    g.output("w", w).expect("out");
    let e = Session::new(&Device::cpu())
        .compile(&g)
        .err()
        .expect("symbolic weight");
    assert!(e.to_string().contains("fixed shape"), "{e}");
    // Absurd shapes are errors, not overflows.
    let mut g = Graph::new();
    let x = g.input("x", [1 << 31, 1 << 31], DType::F32);
    g.output("x", x).expect("out");
    let e = Session::new(&Device::cpu())
        .compile(&g)
        .err()
        .expect("too large");
    assert!(e.to_string().contains("too many elements"), "{e}");
    assert!(Graph::parse("%0: f32]3[ = Input(name:\"x\")()").is_err());
}

#[test]
fn op_names_name_the_specific_op() {
    use polytensor::{BinaryOp, Op, ReduceOp};
    let unary = [
        "neg", "exp", "sqrt", "rsqrt", "tanh", "gelu", "silu", "relu",
    ];
    for (op, name) in UnaryOp::ALL.into_iter().zip(unary) {
        assert_eq!(Op::Unary(op).name(), name);
    }
    let binary = ["add", "sub", "mul", "div", "maximum"];
    for (op, name) in BinaryOp::ALL.into_iter().zip(binary) {
        assert_eq!(Op::Binary(op).name(), name);
    }
    for (op, name) in [
        (ReduceOp::Sum, "sum"),
        (ReduceOp::Max, "max"),
        (ReduceOp::Mean, "mean"),
    ] {
        assert_eq!(Op::Reduce { op, axis: 0 }.name(), name);
    }
    // Errors and placement reports say which op they mean.
    let mut g = Graph::new();
    let a = g.input("a", [2, 3], DType::F32);
    let b = g.input("b", [4, 5], DType::F32);
    let e = g.maximum(a, b).expect_err("broadcast");
    assert!(e.to_string().starts_with("maximum:"), "{e}");
    let e = g
        .reduce(ReduceOp::Mean, a, 5)
        .expect_err("axis out of range");
    assert!(e.to_string().starts_with("mean:"), "{e}");
    let x = g.unary(UnaryOp::Exp, a).expect("exp");
    let y = g.add(x, a).expect("add");
    let m = g.reduce(ReduceOp::Max, y, 1).expect("max");
    let z = g.maximum(m, a).expect("maximum");
    g.output("z", z).expect("out");
    let p = Session::new(&Device::cpu()).compile(&g).expect("compile");
    let ops: Vec<&str> = p
        .placement()
        .nodes
        .iter()
        .filter(|(_, _, at)| at != "source")
        .map(|(_, op, _)| *op)
        .collect();
    assert_eq!(ops, ["exp", "add", "max", "maximum"], "{:?}", p.placement());
}
