package scan

// Kind names what a finding is, such as "github_token" or "email".
// Custom patterns use their Pattern.Name as their Kind.
type Kind string

// The builtin kinds.
const (
	// KindAnthropicAPIKey is an Anthropic API key: "sk-ant-" and at least 32 more key characters.
	KindAnthropicAPIKey Kind = "anthropic_api_key"
	// KindOpenAIAPIKey is an OpenAI API key: "sk-" (or "sk-proj-", "sk-svcacct-", "sk-admin-")
	// and at least 32 more key characters of mixed case with a digit.
	KindOpenAIAPIKey Kind = "openai_api_key"
	// KindAWSAccessKeyID is an AWS access key id: "AKIA" or "ASIA" and 16 upper-case letters or digits.
	KindAWSAccessKeyID Kind = "aws_access_key_id"
	// KindAWSSecretAccessKey is a 40-character AWS secret access key assigned to an AWS-named key,
	// or assigned to a secret-named key within 256 bytes after the word "aws".
	KindAWSSecretAccessKey Kind = "aws_secret_access_key"
	// KindGCPServiceAccount is the private key of a Google Cloud service account key file
	// (a JSON object with "type": "service_account" and "private_key").
	KindGCPServiceAccount Kind = "gcp_service_account"
	// KindAzureConnectionString is the AccountKey or SharedAccessKey of an Azure connection string.
	KindAzureConnectionString Kind = "azure_connection_string"
	// KindGitHubToken is a GitHub token: ghp_, gho_, ghu_, ghs_ or ghr_ and 36 letters or digits,
	// or a fine-grained github_pat_ token.
	KindGitHubToken Kind = "github_token"
	// KindSlackToken is a Slack token: xoxb-, xoxp-, xoxa-, xoxr- or xapp-.
	KindSlackToken Kind = "slack_token"
	// KindStripeKey is a Stripe secret or restricted key: sk_live_, sk_test_, rk_live_ or rk_test_.
	KindStripeKey Kind = "stripe_key"
	// KindJWT is a JSON Web Token: base64url segments joined by dots whose header is JSON with "alg".
	KindJWT Kind = "jwt"
	// KindDatabaseURL is a database URL (postgres, postgresql, mysql, mongodb, mongodb+srv, redis,
	// rediss) with a password in its userinfo. The finding spans the whole URL.
	KindDatabaseURL Kind = "database_url"
	// KindURLCredentials is any other URL with a password in its userinfo, such as
	// https://user:token@host/. The finding spans the whole URL.
	KindURLCredentials Kind = "url_credentials"
	// KindBasicAuth is the credential of an HTTP "Authorization: Basic" header.
	KindBasicAuth Kind = "basic_auth"
	// KindPrivateKey is a PEM private key block (RSA, EC, DSA, OPENSSH, PGP, ENCRYPTED or PKCS#8),
	// or the base64 encoding of one.
	KindPrivateKey Kind = "private_key"
	// KindCreditCard is a payment card number with a known issuer prefix and a valid Luhn check
	// digit: 13 to 16 digits in one run, or 13 to 19 digits in groups joined by spaces or dashes.
	KindCreditCard Kind = "credit_card"
	// KindEmail is an email address.
	KindEmail Kind = "email"
	// KindUSSSN is a US social security number written AAA-GG-SSSS, outside the ranges never issued.
	KindUSSSN Kind = "us_ssn"
	// KindHighEntropyToken is a generic secret: a token of at least Options.MinTokenLength
	// characters whose Shannon entropy reaches Options.EntropyThreshold, assigned to a key whose
	// name says it holds a secret (secret, password, token, api_key, credential, ...) or sent in
	// an Authorization header.
	KindHighEntropyToken Kind = "high_entropy_token"
)

// kindID indexes the kind table of a Scanner: builtin kinds first, then custom patterns.
type kindID uint8

const (
	kAnthropic kindID = iota
	kOpenAI
	kAWSKeyID
	kAWSSecret
	kGCP
	kAzure
	kGitHub
	kSlack
	kStripe
	kJWT
	kDatabaseURL
	kURLCredentials
	kBasicAuth
	kPrivateKey
	kCreditCard
	kEmail
	kSSN
	kEntropy
	numBuiltin
)

// builtinKinds lists the builtin kinds in kindID order with their priority:
// when findings overlap, the higher priority (the more specific kind) wins.
var builtinKinds = [numBuiltin]struct {
	kind     Kind
	priority uint8
}{
	kAnthropic:      {KindAnthropicAPIKey, 80},
	kOpenAI:         {KindOpenAIAPIKey, 78},
	kAWSKeyID:       {KindAWSAccessKeyID, 80},
	kAWSSecret:      {KindAWSSecretAccessKey, 60},
	kGCP:            {KindGCPServiceAccount, 100},
	kAzure:          {KindAzureConnectionString, 85},
	kGitHub:         {KindGitHubToken, 80},
	kSlack:          {KindSlackToken, 80},
	kStripe:         {KindStripeKey, 80},
	kJWT:            {KindJWT, 75},
	kDatabaseURL:    {KindDatabaseURL, 70},
	kURLCredentials: {KindURLCredentials, 65},
	kBasicAuth:      {KindBasicAuth, 60},
	kPrivateKey:     {KindPrivateKey, 90},
	kCreditCard:     {KindCreditCard, 40},
	kEmail:          {KindEmail, 30},
	kSSN:            {KindUSSSN, 40},
	kEntropy:        {KindHighEntropyToken, 10},
}

// customPriority ranks custom patterns below the specific builtin kinds and above
// cards, SSNs, emails and generic tokens.
const customPriority = 50

// BuiltinKinds returns every builtin kind, in a fixed order.
func BuiltinKinds() []Kind {
	out := make([]Kind, numBuiltin)
	for i, k := range builtinKinds {
		out[i] = k.kind
	}
	return out
}

// builtinID returns the id of a builtin kind.
func builtinID(k Kind) (kindID, bool) {
	for i, b := range builtinKinds {
		if b.kind == k {
			return kindID(i), true
		}
	}
	return 0, false
}
