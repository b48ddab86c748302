import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { canonicalQuery, encodeRfc3986, signV4, xmlAll, xmlFirst } from '../src/store/s3/client.js';

/**
 * kura's own S3 client signs with AWS Signature Version 4: checked against the worked examples
 * of Amazon's S3 documentation ("Signature Calculations for the Authorization Header"), so a
 * signing slip shows here rather than as a 403 from one server and not another.
 */
const credentials = { accessKeyId: 'AKIAIOSFODNN7EXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' };
const EMPTY = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
const base = { region: 'us-east-1', amzDate: '20130524T000000Z', credentials };

function signature(authorization: string): { signed: string; signature: string } {
  const m = /SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$/.exec(authorization)!;
  return { signed: m[1]!, signature: m[2]! };
}

test('SigV4: a ranged GET Object signs as in the S3 documentation', () => {
  const headers: Record<string, string> = { host: 'examplebucket.s3.amazonaws.com', range: 'bytes=0-9' };
  signV4({ ...base, method: 'GET', canonicalUri: '/test.txt', query: '', headers, payloadHash: EMPTY });
  assert.match(headers.authorization!, /^AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE\/20130524\/us-east-1\/s3\/aws4_request, /);
  assert.deepEqual(signature(headers.authorization!), { signed: 'host;range;x-amz-content-sha256;x-amz-date', signature: 'f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41' });
});

test('SigV4: a PUT Object with a key that needs encoding signs as in the S3 documentation', () => {
  const body = Buffer.from('Welcome to Amazon S3.');
  const headers: Record<string, string> = { host: 'examplebucket.s3.amazonaws.com', date: 'Fri, 24 May 2013 00:00:00 GMT', 'x-amz-storage-class': 'REDUCED_REDUNDANCY' };
  signV4({ ...base, method: 'PUT', canonicalUri: `/${encodeRfc3986('test$file.text', true)}`, query: '', headers, payloadHash: createHash('sha256').update(body).digest('hex') });
  assert.equal(headers['x-amz-content-sha256'], '44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072');
  assert.deepEqual(signature(headers.authorization!), { signed: 'date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class', signature: '98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd' });
});

test('SigV4: a bucket listing with a query signs as in the S3 documentation', () => {
  const headers: Record<string, string> = { host: 'examplebucket.s3.amazonaws.com' };
  const query = canonicalQuery({ prefix: 'J', 'max-keys': '2' });
  assert.equal(query, 'max-keys=2&prefix=J');
  signV4({ ...base, method: 'GET', canonicalUri: '/', query, headers, payloadHash: EMPTY });
  assert.deepEqual(signature(headers.authorization!), { signed: 'host;x-amz-content-sha256;x-amz-date', signature: '34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7' });
});

test('keys and queries are percent-encoded as SigV4 wants (RFC 3986), slashes kept in paths', () => {
  assert.equal(encodeRfc3986("tenants/a b/packs/ab/x!'()*~._-", true), 'tenants/a%20b/packs/ab/x%21%27%28%29%2A~._-');
  assert.equal(encodeRfc3986('a/b', false), 'a%2Fb');
  assert.equal(canonicalQuery({ 'continuation-token': '1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=', 'list-type': '2' }), 'continuation-token=1ueGcxLPRx1Tr%2FXYExHnhbYLgveDs2J%2Fwm36Hy4vbOwM%3D&list-type=2');
});

test('a ListObjectsV2 answer is read with its entities decoded', () => {
  const xml = '<ListBucketResult><IsTruncated>true</IsTruncated><Contents><Key>a&amp;b/&#x41;&lt;1&gt;</Key><Size>12</Size></Contents><Contents><Key>c</Key><Size>3</Size></Contents><NextContinuationToken>t&quot;1</NextContinuationToken></ListBucketResult>';
  assert.deepEqual(xmlAll(xml, 'Contents').map((c) => [xmlFirst(c, 'Key'), Number(xmlFirst(c, 'Size'))]), [['a&b/A<1>', 12], ['c', 3]]);
  assert.equal(xmlFirst(xml, 'IsTruncated'), 'true');
  assert.equal(xmlFirst(xml, 'NextContinuationToken'), 't"1');
  assert.equal(xmlFirst(xml, 'Missing'), undefined);
});
