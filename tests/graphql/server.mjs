// A GraphQL server for Ferry's `graphql` step tests (crates/ferry/tests/it/graphql.rs).
//
// graphql-yoga over node:http on 127.0.0.1, port from PORT (default 0: a free one). Prints
// its base URL on the first stdout line, then one JSON line per request it receives
// ({ idempotency_key, operation_name, variables }), so the test can see what Ferry sent.
//
// Schema: a mutation `subscribe(email, name)`, a relay connection `customers(first, after)`
// over 7 customers, a field `broken` that always fails with a GraphQL error, and an auth
// check: every request needs `Authorization: Bearer ${TOKEN}` (env TOKEN, default
// `test-token`), else 401 with a GraphQL-over-HTTP error body. An operation named `Flaky`
// answers 503 the first time per Idempotency-Key.
import { createServer } from 'node:http';
import { createSchema, createYoga, createGraphQLError } from 'graphql-yoga';

const TOKEN = process.env.TOKEN ?? 'test-token';
const CUSTOMERS = Array.from({ length: 7 }, (_, i) => ({
  id: `c${i + 1}`,
  name: `Customer ${i + 1}`,
}));

const schema = createSchema({
  typeDefs: /* GraphQL */ `
    type Subscriber { id: ID!  email: String!  name: String }
    type Customer { id: ID!  name: String! }
    type CustomerEdge { cursor: String!  node: Customer! }
    type PageInfo { hasNextPage: Boolean!  endCursor: String }
    type CustomerConnection {
      edges: [CustomerEdge!]!
      nodes: [Customer!]!
      pageInfo: PageInfo!
      totalCount: Int!
    }
    type Query {
      hello: String!
      broken: String
      customers(first: Int!, after: String): CustomerConnection!
    }
    type Mutation {
      subscribe(email: String!, name: String): Subscriber!
    }
  `,
  resolvers: {
    Query: {
      hello: () => 'world',
      broken: () => {
        throw createGraphQLError('the inventory service is down', {
          extensions: { code: 'UNAVAILABLE' },
        });
      },
      customers: (_, { first, after }) => {
        const start = after ? CUSTOMERS.findIndex((c) => c.id === after) + 1 : 0;
        if (after && start === 0) {
          throw createGraphQLError(`unknown cursor ${after}`);
        }
        const page = CUSTOMERS.slice(start, start + first);
        return {
          edges: page.map((c) => ({ cursor: c.id, node: c })),
          nodes: page,
          pageInfo: {
            hasNextPage: start + first < CUSTOMERS.length,
            endCursor: page.length ? page[page.length - 1].id : null,
          },
          totalCount: CUSTOMERS.length,
        };
      },
    },
    Mutation: {
      subscribe: (_, { email, name }) => ({
        id: `sub-${email.toLowerCase()}`,
        email,
        name,
      }),
    },
  },
});

const yoga = createYoga({ schema, graphqlEndpoint: '/graphql', logging: false, maskedErrors: false });

const flakySeen = new Set();

const server = createServer((req, res) => {
  if (req.headers.authorization !== `Bearer ${TOKEN}`) {
    res.writeHead(401, { 'content-type': 'application/graphql-response+json' });
    res.end(JSON.stringify({ errors: [{ message: 'missing or wrong bearer token' }] }));
    return;
  }
  // Log what arrived, then hand the same bytes to yoga.
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    let body = {};
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {}
    process.stdout.write(
      JSON.stringify({
        idempotency_key: req.headers['idempotency-key'] ?? null,
        user_agent: req.headers['user-agent'] ?? null,
        accept: req.headers['accept'] ?? null,
        operation_name: body.operationName ?? null,
        variables: body.variables ?? null,
      }) + '\n',
    );
    // An operation named `Flaky` fails once per Idempotency-Key with a 503 carrying
    // GraphQL errors and `Retry-After: 0`, then succeeds: a retry must reuse the key.
    if (body.operationName === 'Flaky') {
      const key = req.headers['idempotency-key'] ?? '';
      if (!flakySeen.has(key)) {
        flakySeen.add(key);
        res.writeHead(503, {
          'content-type': 'application/graphql-response+json',
          'retry-after': '0',
        });
        res.end(JSON.stringify({ errors: [{ message: 'warming up, try again' }] }));
        return;
      }
    }
    const request = new Request(`http://${req.headers.host}${req.url}`, {
      method: req.method,
      headers: Object.entries(req.headers).flatMap(([k, v]) =>
        Array.isArray(v) ? v.map((x) => [k, x]) : [[k, v]],
      ),
      body: req.method === 'GET' || req.method === 'HEAD' ? undefined : Buffer.concat(chunks),
    });
    yoga
      .fetch(request)
      .then(async (response) => {
        res.writeHead(response.status, Object.fromEntries(response.headers));
        res.end(Buffer.from(await response.arrayBuffer()));
      })
      .catch((e) => {
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(String(e));
      });
  });
});

server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  const { port } = server.address();
  process.stdout.write(`http://127.0.0.1:${port}\n`);
});
// The test closes stdin (or dies): stop with it.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
