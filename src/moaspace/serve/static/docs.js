// Renders openapi.json as a plain list of endpoints (offline: no Swagger UI from a CDN).
"use strict";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function schemaText(schema) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.type === "array") return `array of ${schemaText(schema.items)}`;
  return schema.type || "";
}

async function start() {
  const root = document.getElementById("api");
  const spec = await (await fetch("openapi.json", { credentials: "same-origin" })).json();
  root.appendChild(el("p", `${spec.info.title} ${spec.info.version}: ${spec.info.description || ""}`));
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const block = el("div", null, "endpoint");
      block.appendChild(el("h3", `${method.toUpperCase()} ${path}`));
      if (op.summary) block.appendChild(el("p", op.summary));
      if (op.description) block.appendChild(el("p", op.description, "sub"));
      const params = op.parameters || [];
      if (params.length) {
        const list = el("ul");
        for (const p of params) {
          list.appendChild(el("li", `${p.name} (${p.in}, ${schemaText(p.schema)}${p.required ? ", required" : ""})`));
        }
        block.appendChild(list);
      }
      const body = op.requestBody && op.requestBody.content;
      if (body) {
        for (const [type, content] of Object.entries(body)) {
          const props = (content.schema && content.schema.properties) || {};
          const parts = Object.entries(props).map(([k, v]) => `${k}: ${schemaText(v)}${v.description ? " (" + v.description + ")" : ""}`);
          block.appendChild(el("p", `body ${type}: ${parts.join("; ")}`, "sub"));
        }
      }
      root.appendChild(block);
    }
  }
}

start();
