// tests/test_node_llama_cpp.py: embed one text with node-llama-cpp, with its default embedding context and with
// contextSize = batchSize = N; prints {"default": [...], "sized": [...]} (the vectors as getEmbeddingFor returns them).
import {getLlama} from "node-llama-cpp";

const [, , modelPath, n, text] = process.argv;
const llama = await getLlama({gpu: false, build: "never"});
const model = await llama.loadModel({modelPath});
const vectors = {};
for (const [name, options] of [["default", {}], ["sized", {contextSize: Number(n), batchSize: Number(n)}]]) {
    const context = await model.createEmbeddingContext(options);
    vectors[name] = Array.from((await context.getEmbeddingFor(text)).vector);
    await context.dispose();
}
console.log(JSON.stringify(vectors));
