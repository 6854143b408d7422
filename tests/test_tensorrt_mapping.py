"""Layer <-> ONNX node mapping on synthetic layer descriptions shaped like TensorRT's (docs/FACTS.md #9)."""

from fp16guard.backends.tensorrt.mapping import LayerDesc, map_layers, metadata_nodes, name_candidates, node_table
from fp16guard.io.model import normalize_model

from tensorrt_models import tiny_model


def nodes_and_inits(mixed=False):
    model = tiny_model(mixed)
    return node_table(model), {t.name for t in model.graph.initializer}


def test_node_table_from_real_model():
    nodes, _ = nodes_and_inits()
    assert list(nodes) == ["/fc1/MatMul", "/fc1/Add", "/act/Relu", "/fc2/MatMul", "/softmax/Softmax", "/split/Split", "/out/Add"]
    assert nodes["/split/Split"].outputs == ("s0", "s1")
    assert nodes["/split/Split"].inputs == ("/softmax/Softmax_output_0", "split_sizes")
    assert nodes["/softmax/Softmax"].order == 4


def test_node_table_uses_normalised_names_for_unnamed_nodes():
    model = tiny_model()
    model.graph.node[2].name = ""
    normalize_model(model)
    assert "Relu_2" in node_table(model)


def test_metadata_tags_and_separators():
    text = "[ONNX Layer: /a/MatMul]\x1f[ONNX Layer: /a/Add]\x1e[ONNX Layer: name with ] bracket]"
    assert metadata_nodes(text) == ["/a/MatMul", "/a/Add", "name with ] bracket"]
    assert metadata_nodes("") == []
    assert metadata_nodes("something else") == []


def test_fused_and_myelin_names():
    nodes, _ = nodes_and_inits()
    assert name_candidates("/fc1/MatMul + PWN(/fc1/Add, /act/Relu)", nodes) == ["/fc1/MatMul", "/fc1/Add", "/act/Relu"]
    assert name_candidates("PWN(PWN(/fc1/Add, /act/Relu), /out/Add)", nodes) == ["/fc1/Add", "/act/Relu", "/out/Add"]
    assert name_candidates("{ForeignNode[/act/Relu.../split/Split]}", nodes) == ["/act/Relu", "/fc2/MatMul", "/softmax/Softmax", "/split/Split"]
    assert name_candidates("Reformatting CopyNode for Input Tensor 0 to /fc2/MatMul", nodes) == []
    assert name_candidates("(Unnamed Layer* 3) [Shuffle]", nodes) == []
    # A name that is a prefix of another node's name does not match it.
    assert name_candidates("/fc1/Mat", nodes) == []


def test_network_layers_of_an_onnx_parse_without_metadata():
    """What the TensorRT 8.6 parser gives: names, tensor names, no metadata."""
    nodes, inits = nodes_and_inits()
    shuffle_out = "(Unnamed Layer* 4) [Shuffle]_output"
    layers = [
        LayerDesc(0, "(Unnamed Layer* 0) [Constant]", "CONSTANT", "", (), ("W2",)),
        LayerDesc(1, "/fc1/MatMul", "MATRIX_MULTIPLY", "", ("x", "W1"), ("/fc1/MatMul_output_0",)),
        LayerDesc(2, "/fc1/Add", "ELEMENTWISE", "", ("/fc1/MatMul_output_0", "b1"), ("/fc1/Add_output_0",)),
        LayerDesc(3, "/act/Relu", "ACTIVATION", "", ("/fc1/Add_output_0",), ("/act/Relu_output_0",)),
        LayerDesc(4, "ONNXTRT_ShapeShuffle_4", "SHUFFLE", "", ("W2",), (shuffle_out,)),
        LayerDesc(5, "(Unnamed Layer* 5) [Matrix Multiply]", "MATRIX_MULTIPLY", "", ("/act/Relu_output_0", shuffle_out), ("/fc2/MatMul_output_0",)),
        LayerDesc(6, "/softmax/Softmax", "SOFTMAX", "", ("/fc2/MatMul_output_0",), ("/softmax/Softmax_output_0",)),
        LayerDesc(7, "/split/Split", "SLICE", "", ("/softmax/Softmax_output_0",), ("s0",)),
        LayerDesc(8, "(Unnamed Layer* 8) [Slice]", "SLICE", "", ("/softmax/Softmax_output_0",), ("s1",)),
        LayerDesc(9, "/out/Add", "ELEMENTWISE", "", ("s0", "s1"), ("y",)),
    ]
    m = map_layers(layers, nodes, inits)
    assert m.layers_of("/fc2/MatMul") == [0, 4, 5]  # weight constant, its helper shuffle, the GEMM
    assert m.evidence[5] == "output" and m.evidence[0] == "weight" and m.evidence[4] == "helper"
    assert m.layers_of("/split/Split") == [7, 8]  # output 1 of Split lives in a layer of its own
    assert m.evidence[8] == "output"
    assert m.layers_of("/softmax/Softmax") == [6]
    assert m.node_layers()["/out/Add"] == [9]


def test_metadata_wins_over_names_and_covers_every_layer_of_a_node():
    """TensorRT 10+: every layer a node's import creates carries its tag, whatever its name."""
    nodes, inits = nodes_and_inits()
    tag = "[ONNX Layer: /softmax/Softmax]"
    layers = [
        LayerDesc(0, "/softmax/Softmax", "SHUFFLE", tag, ("/fc2/MatMul_output_0",), ("pre",)),
        LayerDesc(1, "/softmax/Softmax_1", "SOFTMAX", tag, ("pre",), ("post",)),
        LayerDesc(2, "/softmax/Softmax_2", "SHUFFLE", tag, ("post",), ("/softmax/Softmax_output_0",)),
        # A layer named like one node but tagged with another belongs to the tagged one.
        LayerDesc(3, "/out/Add", "ELEMENTWISE", "[ONNX Layer: /fc1/Add]", (), ("z",)),
    ]
    m = map_layers(layers, nodes, inits)
    assert m.layers_of("/softmax/Softmax") == [0, 1, 2]
    assert {m.evidence[i] for i in (0, 1, 2)} == {"metadata"}
    assert m.layers_of("/fc1/Add") == [3] and m.layers_of("/out/Add") == []


def test_helper_shared_by_two_nodes_stays_unattributed():
    nodes, inits = nodes_and_inits()
    layers = [
        LayerDesc(0, "(Unnamed Layer* 0) [Constant]", "CONSTANT", "", (), ("shared",)),
        LayerDesc(1, "/fc1/Add", "ELEMENTWISE", "", ("a", "shared"), ("/fc1/Add_output_0",)),
        LayerDesc(2, "/out/Add", "ELEMENTWISE", "", ("b", "shared"), ("y",)),
    ]
    m = map_layers(layers, nodes, inits)
    assert 0 not in m.layer_nodes
    assert m.layers_of("/fc1/Add") == [1]


def test_fused_engine_layer_maps_to_all_its_nodes():
    nodes, inits = nodes_and_inits(mixed=True)
    layer = LayerDesc(0, "Cast_/fc2/MatMul_in0 + /fc2/MatMul", "", "", ("/act/Relu_output_0",), ("/fc2/MatMul_output_0",))
    m = map_layers([layer], nodes, inits)
    assert m.layer_nodes[0] == frozenset({"Cast_/fc2/MatMul_in0", "/fc2/MatMul"})
