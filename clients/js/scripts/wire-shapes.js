// Print the shapes of the wire types in src/wire.d.ts as JSON, read with the TypeScript compiler's parser:
// {"interfaces": {Name: {prop: {"optional": bool, "nullable": bool}}}, "enums": {Name: [values]}}.
// tests/clients/js/test_js_client.py compares them with the component schemas of Relay's OpenAPI document.

import { readFileSync } from "node:fs";
import ts from "typescript";

const path = new URL("../src/wire.d.ts", import.meta.url);
const source = ts.createSourceFile("wire.d.ts", readFileSync(path, "utf8"), ts.ScriptTarget.Latest, true);

const isNull = (node) => ts.isLiteralTypeNode(node) && node.literal.kind === ts.SyntaxKind.NullKeyword;
const members = (node) => (ts.isUnionTypeNode(node) ? node.types : [node]);

const interfaces = {};
const enums = {};
for (const statement of source.statements) {
  if (ts.isInterfaceDeclaration(statement)) {
    const properties = {};
    for (const member of statement.members) {
      if (!ts.isPropertySignature(member) || !member.type) continue;
      properties[member.name.getText(source)] = {
        optional: member.questionToken !== undefined,
        nullable: members(member.type).some(isNull),
      };
    }
    interfaces[statement.name.text] = properties;
  } else if (ts.isTypeAliasDeclaration(statement)) {
    const values = members(statement.type).map((node) =>
      ts.isLiteralTypeNode(node) && ts.isStringLiteral(node.literal) ? node.literal.text : null,
    );
    if (values.every((value) => value !== null)) enums[statement.name.text] = values;
  }
}
process.stdout.write(JSON.stringify({ interfaces, enums }));
