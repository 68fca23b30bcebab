// Package scan finds credentials and personal data in strings and JSON values and redacts them.
package scan
