// A second, independent xDS client for the xds package's tests: grpc-js with
// @grpc/grpc-js-xds. It dials the xds:/// target given as argument (the
// bootstrap comes from GRPC_XDS_BOOTSTRAP_CONFIG) and makes a health check
// every 100 ms, printing "ok <response hex>" or "err <code> <details>" per
// call until it is killed.
'use strict';
const grpc = require('@grpc/grpc-js');
require('@grpc/grpc-js-xds').register();

const target = process.argv[2];
const client = new grpc.Client(target, grpc.credentials.createInsecure());

function once() {
  const deadline = new Date(Date.now() + 1000);
  client.makeUnaryRequest('/grpc.health.v1.Health/Check', () => Buffer.alloc(0), (b) => b,
    {}, new grpc.Metadata(), { deadline }, (err, res) => {
      if (err) {
        console.log(`err ${err.code} ${String(err.details).replace(/\s+/g, ' ')}`);
      } else {
        console.log(`ok ${res.toString('hex')}`);
      }
      setTimeout(once, 100);
    });
}
once();
