#!/bin/sh
# Make the certificates the TLS tests use, in directory $1 (created): a
# test CA, server certificates (P-256 and RSA 2048) for localhost,
# 127.0.0.1 and ::1, one for another name, an expired one, one from an
# unknown CA, a client certificate, and the server key encrypted with the
# password "secret".  Nothing here is committed: every run makes new keys.
set -eu
d=$1
mkdir -p "$d"
cd "$d"
o() { openssl "$@" 2>/dev/null; }

ec() { o genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

# CA: name, key, cert
mkca() {
	ec "$1.key"
	o req -x509 -new -key "$1.key" -out "$1.pem" -days 30 -subj "/CN=weft test $1" \
		-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}
mkca ca
mkca otherca

# leaf: name ca subject san [extra ext]
leaf() {
	o req -new -key "$1.key" -out "$1.csr" -subj "/CN=$3"
	printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=%s\n' "$4" "${5:-serverAuth}" >"$1.ext"
	o x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -days 30 \
		-extfile "$1.ext" -out "$1.pem"
}
san='DNS:localhost,IP:127.0.0.1,IP:::1'
ec server.key
leaf server ca localhost "$san"
o genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.key
leaf rsa ca localhost "$san"
ec other.key
leaf other ca other.example DNS:other.example
ec unknown.key
leaf unknown otherca localhost "$san"
ec client.key
leaf client ca "weft client" DNS:client.example clientAuth
o pkey -in server.key -aes256 -passout pass:secret -out encrypted.key

# Expired: valid for one day in 2020, signed with `openssl ca`.
ec expired.key
o req -new -key expired.key -out expired.csr -subj /CN=localhost
mkdir -p cadb
: >cadb/index.txt
echo 1000 >cadb/serial
cat >ca.cnf <<CNF
[ca]
default_ca = test
[test]
database = cadb/index.txt
serial = cadb/serial
new_certs_dir = cadb
default_md = sha256
policy = any
copy_extensions = none
x509_extensions = ext
[any]
commonName = supplied
[ext]
subjectAltName = $san
basicConstraints = CA:FALSE
CNF
o ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -in expired.csr -out expired.pem \
	-startdate 20200101000000Z -enddate 20200102000000Z
# The chain a server sends: its certificate, then (harmlessly) the CA.
cat server.pem ca.pem >chain.pem
test -s expired.pem
