"""Export: checkpoint -> ONNX (and OpenVINO IR) with a parity gate; describe a foreign model."""
